from django.urls import path

from webapp.runs.consumers import TaskTraceConsumer

websocket_urlpatterns = [path("ws/tasks/<int:pk>/", TaskTraceConsumer.as_asgi())]
