"""A policy file whose import fails (a dependency the user forgot to install)."""

import peergrid_missing_dependency  # noqa: F401


class Policy:
    def __call__(self, observations):
        return {}
