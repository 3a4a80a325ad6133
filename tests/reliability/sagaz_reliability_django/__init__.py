"""The Django project of the reliability suite (settings from REL_* environment variables)."""
