from django.urls import path

from webapp.bench import views

urlpatterns = [
    path("bench/", views.runs, name="bench_runs"),
    path("bench/<str:name>/", views.run, name="bench_run"),
    path("bench/<str:name>/<str:filename>", views.run_file, name="bench_file"),
]
