"""An order: the business row written in the same transaction as a saga start."""

from django.db import models


class Order(models.Model):
    """A customer's order."""

    reference = models.CharField(max_length=64, unique=True)
    amount = models.IntegerField(default=0)

    def __str__(self) -> str:
        return self.reference
