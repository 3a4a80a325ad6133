"""``manage.py sagaz_*`` commands."""
