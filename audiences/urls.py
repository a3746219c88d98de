from __future__ import annotations

from django.urls import path

from audiences import views

app_name = "audiences"

urlpatterns = [
    path("s/<slug:brand_slug>/<slug:form_slug>/", views.signup, name="signup"),
    path("s/<slug:brand_slug>/<slug:form_slug>/embed/", views.signup_embed, name="signup_embed"),
    path("s/<slug:brand_slug>/<slug:form_slug>/thanks/", views.thanks, name="thanks"),
    path("c/<str:token>/", views.confirm, name="confirm"),
]
