from django.urls import path

from fleet import views

urlpatterns = [
    path("account/api-keys/", views.api_keys, name="account-api-keys"),
    path("account/api-keys/<str:prefix>/revoke", views.api_key_revoke_view, name="account-api-key-revoke"),
]
