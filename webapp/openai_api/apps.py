from django.apps import AppConfig


class OpenAIApiConfig(AppConfig):
    name = "webapp.openai_api"
    label = "openai_api"
