"""Short-lived AWS credentials for the person holding an active AWS role grant."""
from __future__ import annotations

from typing import Any

from sqlmodel import select

from app.domain.errors import Refused
from app.lifecycle.base import LifecycleBase
from app.store import GrantRow
from integrations.base import BackendError
from policies import authority


class Credentials(LifecycleBase):
    def aws_credentials(self, actor: str, request_id: int) -> dict[str, Any]:
        """Short-lived STS credentials for the grantee of an active AWS role grant
        (AWS CLI ``credential_process`` shape); never longer than what remains of the grant."""
        with self.store.transaction() as s:
            row = self._load(s, request_id)
            grant = s.exec(select(GrantRow).where(GrantRow.request_id == row.id)).first()
            refusal = authority.may_take_credentials(actor, row.requester, f"REQ-{row.id}")
            if refusal:
                raise Refused("credentials", refusal)
            if row.state != "active" or grant is None or grant.status != "active":
                raise Refused("state", f"REQ-{row.id} is {row.state}, not active")
            spec = self._spec(grant)
        backend = self.backends.get(grant.backend)
        if not hasattr(backend, "credentials"):
            raise Refused("credentials", f"REQ-{row.id} is a {grant.backend} grant; credentials are for AWS role grants")
        try:
            creds = backend.credentials(spec)
        except BackendError as exc:
            raise Refused("aws", str(exc)) from None
        with self.store.transaction() as s:  # the secret is never recorded, only that it was issued
            self._record(s, at=self.clock(), actor=actor, action="credentials.issued", request_id=row.id,
                         grant_id=grant.id, expiration=creds.get("Expiration"))
        return creds
