"""GraphiQL works offline: its assets come from the app, under a strict CSP."""

from __future__ import annotations

import base64
import hashlib
import json
import re

import httpx
import pytest

from tests.support.browser import find_browser, open_page

HTML = {"Accept": "text/html"}
ATTRIBUTE_URLS = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")


async def test_page_refers_only_to_its_own_assets(server_url: str) -> None:
    async with httpx.AsyncClient() as http:
        page = await http.get(f"{server_url}/graphql", headers=HTML)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        html = page.text
        assert "://" not in html and "//" not in re.sub(r"<!--.*?-->", "", html)
        urls = [url for url in ATTRIBUTE_URLS.findall(html) if url != "data:,"]  # no favicon
        assert len(urls) == 6, urls
        for url in urls:
            assert url.startswith("graphql/static/"), url
            asset = await http.get(f"{server_url}/{url}")
            assert asset.status_code == 200, url
            # Each vendored file has the integrity hash the npm release is known by.
            tag = next(t for t in re.findall(r"<[^>]+>", html) if url in t)
            integrity = re.search(r'integrity="sha384-([^"]+)"', tag)
            if integrity:
                digest = base64.b64encode(hashlib.sha384(asset.content).digest()).decode()
                assert digest == integrity.group(1), url
        licenses = await http.get(f"{server_url}/graphql/static/LICENSE.graphiql")
        assert "MIT License" in licenses.text

    csp = dict(
        part.strip().split(" ", 1)
        for part in page.headers["content-security-policy"].split(";")
        if part.strip()
    )
    assert csp["default-src"] == "'none'"
    assert csp["script-src"] == "'self'"
    assert csp["style-src"] == "'self'"
    host = server_url.removeprefix("http://")
    assert csp["connect-src"] == f"'self' ws://{host}"
    assert csp["frame-ancestors"] == "'none'"


async def test_graphiql_renders_and_runs_a_query_in_a_browser(server_url: str) -> None:
    browser = find_browser()
    if browser is None:
        pytest.skip("no chromium on PATH (Debian: `apt-get install chromium`)")
    async with open_page(browser) as page:
        await page.send("Runtime.enable")
        await page.send("Log.enable")
        await page.send("Network.enable")
        await page.send("Page.navigate", url=f"{server_url}/graphql")
        # The editor is up once CodeMirror has rendered the default query.
        await page.wait_for(
            "!!document.querySelector('.graphiql-query-editor .CodeMirror')"
            " && document.querySelector('.graphiql-query-editor .CodeMirror')"
            ".CodeMirror.getValue().includes('me { id email }')"
        )
        # The schema loaded through introspection: the docs explorer knows Query.
        await page.send(
            "Runtime.evaluate",
            expression="document.querySelector('.graphiql-query-editor .CodeMirror')"
            ".CodeMirror.setValue('{ __typename documents { edges { cursor } } }')",
        )
        await page.evaluate("document.querySelector('.graphiql-execute-button').click()")
        response = await page.wait_for(
            "(document.querySelector('.graphiql-response .CodeMirror') || {CodeMirror: "
            "{getValue: () => ''}}).CodeMirror.getValue()"
        )
        result = json.loads(response)
        assert result["data"] is None
        assert result["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"

        requested = [
            e["params"]["request"]["url"]
            for e in page.events
            if e.get("method") == "Network.requestWillBeSent"
        ]
        assert f"{server_url}/graphql/static/graphiql.min.js" in requested
        outside = [u[:80] for u in requested if not u.startswith((server_url, "data:"))]
        assert outside == []
        problems = [
            e["params"]["entry"]
            for e in page.events
            if e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"
        ]
        thrown = [e["params"] for e in page.events if e.get("method") == "Runtime.exceptionThrown"]
        assert problems == [] and thrown == [], (problems, thrown)
