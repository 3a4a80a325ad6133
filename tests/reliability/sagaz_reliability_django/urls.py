"""The webhook routes under /webhooks/."""

from __future__ import annotations

from django.urls import include, path

urlpatterns = [path("webhooks/", include("sagaz.integrations.django.urls"))]
