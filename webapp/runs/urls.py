from django.urls import path

from webapp.runs import views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("tasks/<int:pk>/", views.task_detail, name="task_detail"),
    path("tasks/<int:pk>/cancel/", views.task_cancel, name="task_cancel"),
    path("tasks/<int:pk>/message/", views.task_message, name="task_message"),
    path("tasks/<int:pk>/lanes.json", views.task_lanes, name="task_lanes"),
    path("tasks/<int:pk>/trace.json", views.task_trace, name="task_trace"),
    path("compare/<uuid:group>/", views.compare, name="compare"),
    path("teams/new/", views.team_new, name="team_new"),
]
