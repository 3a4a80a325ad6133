"""URLconf of the in-process Django project of the hostile replay: the plugin at /webhooks/."""

from django.urls import include, path

urlpatterns = [path("webhooks/", include("sagaz.integrations.django.urls"))]
