"""Account pages: ``/account/api-keys/`` lists the signed-in user's own API keys, issues one (shown once) and revokes
them. Only one's own keys, operators included (they revoke others' keys in the admin); another's prefix is a 404."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from fleet import selectors
from fleet.models import ApiScope, Organisation
from fleet.services.accounts import API_KEY_MAX_LIFETIME, api_key_issue, api_key_revoke
from fleet.services.errors import FleetError


class ApiKeyIssueForm(forms.Form):
    name = forms.CharField(max_length=50, required=False, help_text="a label, e.g. the client's name")
    scopes = forms.MultipleChoiceField(choices=ApiScope.choices, widget=forms.CheckboxSelectMultiple)
    expires_in_days = forms.IntegerField(min_value=1, max_value=API_KEY_MAX_LIFETIME.days, initial=30)
    organisation = forms.ModelChoiceField(queryset=Organisation.objects.none(), required=False)
    portfolio = forms.CharField(max_length=64, required=False, help_text="limit a signal key to one portfolio")

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["organisation"].queryset = selectors.organisations_for(user)  # type: ignore[attr-defined]


@login_required
@require_http_methods(["GET", "POST"])
def api_keys(request: HttpRequest) -> HttpResponse:
    new_key = ""
    form = ApiKeyIssueForm(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            _key, new_key = api_key_issue(
                user=request.user,
                scopes=data["scopes"],
                expires_at=timezone.now() + timedelta(days=data["expires_in_days"]),
                organisation=data["organisation"],
                portfolio=data["portfolio"],
                name=data["name"],
            )
        except FleetError as exc:
            form.add_error(None, str(exc))
        else:
            form = ApiKeyIssueForm(user=request.user)
    context = {"keys": selectors.api_keys_of(request.user), "form": form, "new_key": new_key}
    response = render(request, "fleet/api_keys.html", context)
    if new_key:
        response["Cache-Control"] = "no-store"  # the one page that shows the key: kept by no cache
    return response


@login_required
@require_POST
def api_key_revoke_view(request: HttpRequest, prefix: str) -> HttpResponse:
    key = get_object_or_404(selectors.api_keys_of(request.user), prefix=prefix)
    api_key_revoke(key=key)
    messages.success(request, f"Key {key.prefix} ({key.name}) revoked.")
    return redirect("account-api-keys")
