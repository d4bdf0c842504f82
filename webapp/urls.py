from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from webapp.core.login import ThrottledAdminAuthenticationForm, ThrottledAuthenticationForm

admin.site.login_form = ThrottledAdminAuthenticationForm

urlpatterns = [
    path("accounts/login/", auth_views.LoginView.as_view(authentication_form=ThrottledAuthenticationForm),
         name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("", include("webapp.core.urls")),
    path("", include("webapp.runs.urls")),
    path("", include("webapp.api.urls")),
    path("", include("webapp.bench.urls")),
    path("", include("webapp.openai_api.urls")),
]
