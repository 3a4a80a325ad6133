"""A saga module whose own import fails (the error must surface, not be hidden)."""

import not_installed_anywhere  # noqa: F401
