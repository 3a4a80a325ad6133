"""URLs of the Sagaz Django example."""

from django.urls import include, path
from shop import views

urlpatterns = [
    path("health", views.health),
    path("orders", views.create_order),
    path("orders/<str:order_id>/diagram", views.order_diagram),
    # POST webhooks/<source>, GET webhooks/<source>/status/<correlation_id>,
    # GET webhooks/status/<saga_id> and webhooks/status/<saga_id>/diagram, webhooks/health
    path("webhooks/", include("sagaz.integrations.django.urls")),
]
