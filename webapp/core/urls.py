from django.urls import path

from webapp.core import views

urlpatterns = [path("health/", views.health_json, name="health")]
