"""A tiny shop app: an Order model and the sagas of its sagas.py."""
