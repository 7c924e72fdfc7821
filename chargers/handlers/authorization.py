"""Authorization (OCPP block C): Authorize, and the id token lookup TransactionEvent answers with too."""

from __future__ import annotations

from typing import Any

from chargers.batch import BatchContext
from chargers.handlers.plug_and_charge import contract_authorize
from chargers.jobs import StationRef
from chargers.models import IdToken


def id_token_info(id_token: dict[str, Any]) -> dict[str, Any]:
    token = IdToken.objects.select_related("group").filter(id_token=id_token["idToken"], type=id_token["type"]).first()
    if token is None:
        return {"status": "Unknown"}
    info: dict[str, Any] = {"status": token.status}
    if token.group is not None:
        info["groupIdToken"] = {"idToken": token.group.id_token, "type": token.group.type}
    return info


def id_token_authorize(ctx: BatchContext, station: StationRef, payload: dict[str, Any]) -> dict[str, Any]:
    if "iso15118CertificateHashData" in payload or "certificate" in payload:  # Plug & Charge (C07)
        return contract_authorize(ctx, id_token_info(payload["idToken"]))
    return {"idTokenInfo": id_token_info(payload["idToken"])}
