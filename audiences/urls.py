from __future__ import annotations

from django.urls import path

from audiences.views import preferences, signup

app_name = "audiences"

urlpatterns = [
    path("s/<slug:brand_slug>/<slug:form_slug>/", signup.signup, name="signup"),
    path("s/<slug:brand_slug>/<slug:form_slug>/embed/", signup.signup_embed, name="signup_embed"),
    path("s/<slug:brand_slug>/<slug:form_slug>/thanks/", signup.thanks, name="thanks"),
    path("c/<str:token>/", signup.confirm, name="confirm"),
    path("u/<str:token>/", preferences.unsubscribe, name="unsubscribe"),
    path("p/<str:token>/", preferences.preferences, name="preferences"),
    path("p/<str:token>/<slug:action>/", preferences.preferences_confirmed, name="preferences_confirmed"),
    path("m/<slug:brand_slug>/", preferences.manage_request, name="manage_request"),
    path("m/<slug:brand_slug>/sent/", preferences.manage_sent, name="manage_sent"),
]
