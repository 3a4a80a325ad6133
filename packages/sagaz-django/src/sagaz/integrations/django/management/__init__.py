"""Management commands of the Sagaz Django app."""
