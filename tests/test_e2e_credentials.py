"""Token credentials end to end (SPEC 6): real mitmdump gateways, a fake WeChat and a fake OAuth2
provider, one real Redis shared by two gateway instances."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from tests.fakes import FakeProvider, Reply, Seen
from tests.harness import Gateway, write_rules

APP, APP_SECRET = "order-service", "s3cret-order-e2e"
WECHAT_APPID, WECHAT_SECRET = "wx-e2e-appid", "wechat-secret-e2e-0123456789"
OAUTH_ID, OAUTH_SECRET = "gw-client", "oauth-secret-e2e-9876543210"
SEND = "/cgi-bin/message/custom/send"


class FakeWechat:
    """WeChat's token endpoint and one API: a token is valid until `invalidate()` (as a new fetch
    elsewhere, or WeChat itself, would make it); every fetch is counted by the FakeProvider."""

    def __init__(self, provider: FakeProvider, token_delay: float = 0.0) -> None:
        self.provider = provider
        self.lock = threading.Lock()
        self.issued: list[str] = []
        self.valid: set[str] = set()
        self.token_delay = token_delay
        provider.on("GET", "/cgi-bin/token", self._token)
        provider.on("POST", SEND, self._send)

    def _token(self, seen: Seen) -> Reply:
        query = seen.query
        if query.get("grant_type") != "client_credential" or query.get("appid") != WECHAT_APPID:
            return Reply(200, {"errcode": 40013, "errmsg": "invalid appid"})
        if query.get("secret") != WECHAT_SECRET:
            return Reply(200, {"errcode": 40125, "errmsg": "invalid appsecret, rid: 6655aa-1"})
        with self.lock:
            token = f"wx-real-token-{len(self.issued) + 1}-{uuid.uuid4().hex}"
            self.issued.append(token)
            self.valid.add(token)
        return Reply(200, {"access_token": token, "expires_in": 7200}, delay=self.token_delay)

    def _send(self, seen: Seen) -> Reply:
        with self.lock:
            ok = seen.query.get("access_token") in self.valid
        if not ok:
            return Reply(200, {"errcode": 40001, "errmsg": "invalid credential, access_token is invalid or not latest"})
        return Reply(200, {"errcode": 0, "errmsg": "ok", "msgid": 1})

    def invalidate(self) -> None:
        with self.lock:
            self.valid.clear()

    @property
    def fetches(self) -> int:
        return len(self.provider.hits("/cgi-bin/token"))


def wechat_rules(tmp_path: Path, url: str, name: str = "rules") -> Path:
    return write_rules(tmp_path / name, {
        "wechat.yaml": f"""
            service: wechat
            hosts: [api.weixin.qq.com]
            upstream: {{url: "{url}", timeout: 3s}}
            credentials:
              type: wechat_token
              app_id: {WECHAT_APPID}
              secret: ${{WECHAT_SECRET}}
            envelope: wechat
            quota: [{{limit: 100000/min, per: service}}]
            methods:
              send_msg: {{method: POST, path: {SEND}}}
            unmatched: allow
        """,
        "apps.yaml": f"""
            apps:
              {APP}: {{secret: {APP_SECRET}, allow: ["*"]}}
            gateway: {{require_app: true}}
        """,
    })


def send(gw: Gateway, request_id: str | None = None) -> requests.Response:
    headers = {"X-Request-ID": request_id} if request_id else {}
    # The app still sends a token of its own (from its SDK's cache): the gateway's replaces it.
    return requests.post(f"http://api.weixin.qq.com{SEND}?access_token=apps-own-stale-token",
                         json={"touser": "o1", "msgtype": "text", "text": {"content": "hi"}},
                         headers=headers, proxies=gw.proxies(APP, APP_SECRET), timeout=20)


def app_token_call(gw: Gateway) -> requests.Response:
    return requests.get("http://api.weixin.qq.com/cgi-bin/token",
                        params={"grant_type": "client_credential", "appid": WECHAT_APPID, "secret": "apps-copy"},
                        proxies=gw.proxies(APP, APP_SECRET), timeout=20)


def token_refreshes(gw: Gateway, result: str) -> float:
    text = requests.get(f"{gw.admin}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("gateway_token_refreshes_total{") and f'result="{result}"' in line \
                and 'service="wechat"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def assert_no_token_written(gw: Gateway, tokens: list[str]) -> None:
    log_text = gw.log_path.read_text()
    output = gw.output()
    assert log_text.strip(), "the access log is empty"
    for secret in [*tokens, WECHAT_SECRET]:
        assert secret not in log_text, "a token or secret is in the access log"
        assert secret not in output, "a token or secret is in the mitmdump output"


def test_two_instances_on_one_redis_make_one_token_fetch(tmp_path: Path, confdir: Path, fake: FakeProvider,
                                                         redis_url: str, gateways: list[Gateway]) -> None:
    wechat = FakeWechat(fake, token_delay=0.3)  # every call arrives while the one fetch is in flight
    rules = wechat_rules(tmp_path, fake.url)
    env = {"WECHAT_SECRET": WECHAT_SECRET}
    for _ in range(2):
        gateways.append(Gateway(rules, confdir, redis=redis_url, env=env).start())
    # The apps' own token calls are answered by the gateway (and open each instance's Redis pool).
    for gw in gateways:
        own = app_token_call(gw)
        assert own.status_code == 200 and own.json()["code"] == 0, own.text
        assert own.json()["data"]["access_token"] != "" and own.json()["data"]["expires_in"] == 7200
    assert wechat.fetches == 0

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda i: send(gateways[i % 2], f"burst-call-{i:04d}"), range(50)))
    assert [a.json()["code"] for a in answers] == [0] * 50, [a.text for a in answers if a.json()["code"]]
    assert wechat.fetches == 1
    sent = fake.hits(SEND)
    assert len(sent) == 50
    assert {s.query["access_token"] for s in sent} == {wechat.issued[0]}
    assert all("apps-own-stale-token" not in s.path for s in sent)
    assert sum(token_refreshes(gw, "success") for gw in gateways) == 1
    for gw in gateways:
        gw.log_for("burst-call-0000" if gw is gateways[0] else "burst-call-0001")
        assert_no_token_written(gw, wechat.issued)


def test_invalidated_token_is_refreshed_once_across_the_fleet(tmp_path: Path, confdir: Path, fake: FakeProvider,
                                                              redis_url: str, gateways: list[Gateway]) -> None:
    wechat = FakeWechat(fake, token_delay=0.2)
    rules = wechat_rules(tmp_path, fake.url)
    env = {"WECHAT_SECRET": WECHAT_SECRET}
    # flow_detail=3: mitmdump prints every flow in full; the injected token must not be in it either.
    for _ in range(2):
        gw = Gateway(rules, confdir, redis=redis_url, env=env)
        gw.cmd[gw.cmd.index("flow_detail=0")] = "flow_detail=3"
        gateways.append(gw.start())
    for gw in gateways:
        first = send(gw)
        assert first.json()["code"] == 0, first.text
    assert wechat.fetches == 1
    wechat.invalidate()  # the provider now answers 40001 to the token every instance holds

    one = send(gateways[0], "after-invalidation-1")
    assert one.status_code == 200 and one.json()["code"] == 0, one.text
    assert one.headers["X-Gateway-Attempts"] == "1"  # the repeat after a refresh is not a retry
    assert wechat.fetches == 2
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda i: send(gateways[i % 2]), range(20)))
    assert [a.json()["code"] for a in answers] == [0] * 20, [a.text for a in answers if a.json()["code"]]
    assert wechat.fetches == 2, "an instance refreshed a token that another one had already replaced"
    rejected = [s for s in fake.hits(SEND) if s.query["access_token"] == wechat.issued[0]]
    # The first call, plus the other instance's calls that went out with the old token before the
    # first of them came back with 40001 (its hot path does not ask Redis); each then found the new
    # token in Redis instead of fetching one.
    assert 1 <= len(rejected) <= 11
    line = gateways[0].log_for("after-invalidation-1")
    assert line["code"] == 0
    for gw in gateways:
        assert_no_token_written(gw, wechat.issued)


def test_app_token_call_never_reaches_wechat(tmp_path: Path, confdir: Path, fake: FakeProvider,
                                             gateways: list[Gateway]) -> None:
    wechat = FakeWechat(fake)
    gw = Gateway(wechat_rules(tmp_path, fake.url), confdir, env={"WECHAT_SECRET": WECHAT_SECRET}).start()
    gateways.append(gw)
    answer = app_token_call(gw)
    assert answer.status_code == 200
    data = answer.json()["data"]
    assert data["expires_in"] == 7200 and "placeholder" in data["access_token"]
    # Raw, as an SDK such as wechatpy reads it.
    raw = requests.get("http://api.weixin.qq.com/cgi-bin/token?grant_type=client_credential",
                       headers={"X-Gateway-Envelope": "raw"}, proxies=gw.proxies(APP, APP_SECRET), timeout=20)
    assert raw.status_code == 200 and raw.json() == {"access_token": data["access_token"], "expires_in": 7200}
    assert fake.hits() == []
    assert wechat.fetches == 0
    # The placeholder the app got works like any token: the gateway sends its own.
    assert send(gw).json()["code"] == 0
    assert fake.hits(SEND)[0].query["access_token"] == wechat.issued[0]


def test_wrong_secret_is_1002_with_a_bounded_number_of_token_requests(tmp_path: Path, confdir: Path,
                                                                      fake: FakeProvider,
                                                                      gateways: list[Gateway]) -> None:
    wechat = FakeWechat(fake)
    gw = Gateway(wechat_rules(tmp_path, fake.url), confdir, env={"WECHAT_SECRET": "not-the-right-secret-42"}).start()
    gateways.append(gw)
    answers: list[requests.Response] = [send(gw, "wrong-secret-first")]
    with ThreadPoolExecutor(10) as pool:
        answers += list(pool.map(lambda _i: send(gw), range(30)))
    for answer in answers:
        body: dict[str, Any] = answer.json()
        assert answer.status_code == 502 and body["code"] == -1002 and body["source"] == "upstream"
        assert answer.headers["X-Gateway-Code"] == "-1002"
        assert "provider refused the gateway's credentials (token fetch failed)" in body["message"]
        assert "not-the-right-secret-42" not in answer.text
    # 31 calls within the backoff windows (1 s, then 2 s, ...): a handful of fetches, not one per call.
    assert 1 <= wechat.fetches <= 3
    assert fake.hits(SEND) == []
    assert token_refreshes(gw, "error") == wechat.fetches and token_refreshes(gw, "success") == 0
    line = gw.log_for("wrong-secret-first")
    assert line["code"] == -1002 and "40125" in line["error"]
    log_text = gw.log_path.read_text() + gw.output()
    assert "not-the-right-secret-42" not in log_text


def oauth_rules(tmp_path: Path, url: str) -> Path:
    return write_rules(tmp_path / "rules", {
        "api.yaml": f"""
            service: api
            hosts: [api.example.test]
            upstream: {{url: "{url}", timeout: 3s}}
            credentials:
              type: oauth2_client_credentials
              token_url: "{url}/oauth/token"
              client_id: {OAUTH_ID}
              client_secret: ${{API_CLIENT_SECRET}}
              scope: items.read
            envelope: json
            methods:
              items: {{method: GET, path: /v1/items}}
        """,
        "apps.yaml": f"""
            apps:
              {APP}: {{secret: {APP_SECRET}, allow: ["*"]}}
            gateway: {{require_app: true}}
        """,
    })


def test_oauth2_bearer_injection_and_refresh_on_401(tmp_path: Path, confdir: Path, fake: FakeProvider,
                                                    gateways: list[Gateway]) -> None:
    import base64

    lock = threading.Lock()
    issued: list[str] = []
    valid: set[str] = set()
    basic = "Basic " + base64.b64encode(f"{OAUTH_ID}:{OAUTH_SECRET}".encode()).decode()

    def token(seen: Seen) -> Reply:
        form = dict(pair.split("=", 1) for pair in seen.body.decode().split("&"))
        if seen.headers.get("authorization") != basic or form.get("grant_type") != "client_credentials":
            return Reply(401, {"error": "invalid_client"})
        with lock:
            value = f"oauth-real-token-{len(issued) + 1}-{uuid.uuid4().hex}"
            issued.append(value)
            valid.add(value)
        return Reply(200, {"access_token": value, "token_type": "Bearer", "expires_in": 3600})

    def items(seen: Seen) -> Reply:
        auth = seen.headers.get("authorization", "")
        with lock:
            ok = auth.startswith("Bearer ") and auth[7:] in valid
        if not ok:
            return Reply(401, {"error": "invalid_token"}, {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return Reply(200, {"items": [1, 2, 3]})

    fake.on("POST", "/oauth/token", token)
    fake.on("GET", "/v1/items", items)
    gw = Gateway(oauth_rules(tmp_path, fake.url), confdir, env={"API_CLIENT_SECRET": OAUTH_SECRET}).start()
    gateways.append(gw)

    def call(request_id: str) -> requests.Response:
        return requests.get("http://api.example.test/v1/items", headers={"Authorization": "Bearer apps-own",
                                                                         "X-Request-ID": request_id},
                            proxies=gw.proxies(APP, APP_SECRET), timeout=20)

    first = call("oauth-call-first")
    assert first.status_code == 200 and first.json()["data"] == {"items": [1, 2, 3]}
    assert len(fake.hits("/oauth/token")) == 1
    assert fake.hits("/v1/items")[0].headers["authorization"] == f"Bearer {issued[0]}"
    with lock:
        valid.clear()
    second = call("oauth-call-after-401")
    assert second.status_code == 200 and second.json()["code"] == 0
    assert len(fake.hits("/oauth/token")) == 2
    hits = fake.hits("/v1/items")
    assert [h.headers["authorization"] for h in hits] == [f"Bearer {issued[0]}", f"Bearer {issued[0]}",
                                                          f"Bearer {issued[1]}"]
    gw.log_for("oauth-call-after-401")
    text = gw.log_path.read_text() + gw.output()
    for secret in [*issued, OAUTH_SECRET]:
        assert secret not in text


def test_raw_envelope_service_still_refreshes_an_invalidated_token(tmp_path: Path, confdir: Path,
                                                                     fake: FakeProvider) -> None:
    # A legacy app's SDK wants WeChat's own bodies (envelope: raw); a 40001 inside such a body must
    # still make the gateway refresh its token and repeat the call, and the app sees only success.
    wechat = FakeWechat(fake)
    rules = wechat_rules(tmp_path, fake.url)
    path = rules / "wechat.yaml"
    path.write_text(path.read_text().replace("envelope: wechat", "envelope: raw"))
    with Gateway(rules, confdir, env={"WECHAT_SECRET": WECHAT_SECRET}) as gw:
        assert send(gw).json() == {"errcode": 0, "errmsg": "ok", "msgid": 1}
        wechat.invalidate()
        again = send(gw)
        assert again.json() == {"errcode": 0, "errmsg": "ok", "msgid": 1}, again.text
        assert wechat.fetches == 2
