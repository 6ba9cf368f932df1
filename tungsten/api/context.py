"""What a request carries into the core: where hrefs point, and who is asking."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RequestCtx:
    base_url: str = "http://127.0.0.1:8082"  # scheme://Host, for hrefs
    exclude_hrefs: bool = False
    is_admin: bool = True
    project_id: str | None = None  # X-Project-Id, used as the default owner
    user_agent: str = ""

    def href(self, rtype: str, uuid: str) -> str:
        return f"{self.base_url}/{rtype}/{uuid}"
