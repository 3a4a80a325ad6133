"""URLs of the test project: the admin and the Sagaz routes under ``sagaz/``."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("sagaz/", include("sagaz.integrations.django.urls")),
]
