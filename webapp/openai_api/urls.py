from django.urls import path

from webapp.openai_api import views

urlpatterns = [
    path("v1/models", views.models, name="openai_models"),
    path("v1/models/<str:name>", views.model, name="openai_model"),
    path("v1/chat/completions", views.chat_completions, name="openai_chat_completions"),
]
