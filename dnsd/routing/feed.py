"""Health from probes: poll each feed (ETag), keep the last good document per feed, combine feeds by
quorum, expire verdicts older than the TTL (fail open), persist, and hand dnsd a new HealthSnapshot."""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Callable

import aiohttp
import structlog

from dnsd.routing.feedaccess import FeedAccessError, FeedTrust
from dnsd.common.files import json_text, write_text_atomically
from dnsd.routing.health import RECOVERING, SUSPECT, EndpointHealth, FeedDocument, HealthSnapshot, Status
from dnsd.model import HealthFeedSettings
from dnsd.common.logs import LogGate

log = structlog.get_logger(__name__)

MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
STATE_FORMAT = "geotm-dnsd-health/1"


@dataclass(slots=True)
class FeedState:
    url: str
    document: FeedDocument | None = None
    etag: str | None = None
    fetched_at: float = 0.0  # wall clock of the last good answer (200 or 304) from this feed
    error: str | None = None  # the last fetch's problem, None when it went well
    leased: bool = False  # published in etcd under a lease: live while the key is (dnsd.cluster.verdicts)

    def fresh(self, now: float, ttl: float) -> bool:
        return self.document is not None and (self.leased or now - self.fetched_at <= ttl)


def _suspect(verdicts: list[tuple[FeedState, EndpointHealth]]) -> str:
    """SUSPECT when a probe that finds the replica online has seen its last checks fail."""
    return SUSPECT if any(h.trend == SUSPECT for _, h in verdicts) else ""


class HealthFeed:
    def __init__(self, settings: HealthFeedSettings, known: set[tuple[str, str]],
                 apply: Callable[[HealthSnapshot], None], clock: Callable[[], float] = time.time):
        self.settings = settings
        self.known = known
        self.apply = apply
        self.clock = clock
        self.feeds = [FeedState(url) for url in settings.feeds]
        # probes instances publishing through etcd, by instance name: each one is a feed while its key lives
        self.cluster_feeds: dict[str, FeedState] = {}
        self.trust = {url: FeedTrust(settings.access_for(url)) for url in settings.feeds}
        # a refused token is logged at once, then at most once a minute per feed while it lasts
        self._refusals = {url: LogGate(interval=60.0, burst=1) for url in settings.feeds}
        self.expired = False  # running on expired health (every feed silent for longer than the TTL)
        self.generation = 0
        self.current: dict[tuple[str, str], EndpointHealth] | None = None
        self.errors_by_url: dict[str, int] = {}
        self._last_saved = 0.0
        self._reported_unknown: set[tuple[str, str]] = set()

    # -- persistence --------------------------------------------------------------------------

    def load_state(self) -> None:
        """Last good documents from disk, so a restarted dnsd keeps applying a degraded verdict."""
        path = self.settings.state_file
        if not path:
            return
        try:
            data = json.loads(Path(path).read_text())
            if data.get("format") != STATE_FORMAT:
                raise ValueError(f"unknown format {data.get('format')!r}")
            by_url = {entry["url"]: entry for entry in data["feeds"]}
            for feed in self.feeds:
                entry = by_url.get(feed.url)
                if entry is None:
                    continue
                feed.document = FeedDocument.from_json(entry["document"])
                feed.fetched_at = float(entry["fetched_at"])
            for entry in data.get("cluster_feeds", []):  # verdicts from etcd: they age out through the TTL
                feed = FeedState(f"etcd:{entry['instance']}", FeedDocument.from_json(entry["document"]),
                                 fetched_at=float(entry["fetched_at"]))
                self.cluster_feeds[entry["instance"]] = feed
            log.info("health_state_loaded", path=path,
                     feeds=sum(1 for f in self.feeds if f.document is not None),
                     cluster_feeds=sorted(self.cluster_feeds))
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("health_state_unreadable", path=path, error=str(err))

    def save_state(self, force: bool = False) -> None:
        due = self._state_due(force)
        if due is not None:
            path, text, now = due
            try:
                write_text_atomically(path, text)
            except OSError as err:
                log.warning("health_state_not_saved", path=path, error=str(err))
            else:
                self._last_saved = now

    async def save_state_off_loop(self, force: bool = False) -> None:
        """save_state with the file write and its fsync (milliseconds on a disk, every 5 s while
        polling) in a thread, so answering never waits for the disk."""
        due = self._state_due(force)
        if due is not None:
            path, text, now = due
            try:
                await asyncio.to_thread(write_text_atomically, path, text)
            except OSError as err:
                log.warning("health_state_not_saved", path=path, error=str(err))
            else:
                self._last_saved = now

    def _state_due(self, force: bool) -> tuple[str, str, float] | None:
        """(path, the state file's text, now) when a save is due: forced, or 5 s since the last."""
        path = self.settings.state_file
        now = self.clock()
        if not path or (not force and now - self._last_saved < 5.0):
            return None
        data = {"format": STATE_FORMAT,
                "feeds": [{"url": f.url, "fetched_at": f.fetched_at, "document": f.document.to_json()}
                          for f in self.feeds if f.document is not None],
                # a leased instance's verdicts were live now: a restart without etcd keeps them for the TTL
                "cluster_feeds": [{"instance": instance, "fetched_at": now if f.leased else f.fetched_at,
                                   "document": f.document.to_json()}
                                  for instance, f in self.cluster_feeds.items() if f.document is not None]}
        return path, json_text(data), now

    # -- combining ------------------------------------------------------------------------------

    def set_cluster_verdicts(self, instance: str, document: FeedDocument | None) -> None:
        """A probes instance's verdicts from etcd (None: its lease ended, it takes them with it)."""
        if document is None:
            if self.cluster_feeds.pop(instance, None) is not None:
                log.info("health_feed_gone", instance=instance, reason="its lease in etcd ended")
            return
        feed = self.cluster_feeds.get(instance)
        if feed is None:
            feed = self.cluster_feeds[instance] = FeedState(f"etcd:{instance}")
            log.info("health_feed_joined", instance=instance)
        self._report_unknown(feed.url, document)
        feed.document, feed.fetched_at, feed.leased = document, self.clock(), True

    def cluster_unreachable(self) -> None:
        """etcd's word is no longer current: the verdicts last seen age out through health.ttl."""
        now = self.clock()
        for feed in self.cluster_feeds.values():  # live until now: they age from here
            feed.leased, feed.fetched_at = False, now if feed.leased else feed.fetched_at

    def combine(self) -> dict[tuple[str, str], EndpointHealth]:
        now = self.clock()
        ttl = self.settings.ttl
        feeds = self.feeds + list(self.cluster_feeds.values())
        fresh = [f for f in feeds if f.fresh(now, ttl)]
        # expired: we had verdicts and they all went stale; never having had any is not "expired"
        expired = any(f.document is not None for f in feeds) and not fresh
        if expired != self.expired:
            self.expired = expired
            if expired:
                newest = max((f.fetched_at for f in feeds), default=0.0)
                log.warning("health_expired", ttl=ttl, last_good_age=round(now - newest, 1) if newest else None,
                            effect="every replica counts as online (fail open) until probes answer again",
                            errors={f.url: f.error for f in feeds})
            else:
                log.info("health_restored", feeds=[f.url for f in fresh])
        needed = self.settings.votes_needed(len(fresh))
        combined: dict[tuple[str, str], EndpointHealth] = {}
        for key in sorted(self.known):
            verdicts = [(f, f.document.endpoints[key]) for f in fresh if key in f.document.endpoints]
            degraded = [(f, h) for f, h in verdicts if h.status is Status.DEGRADED]
            # The trend (suspect / recovering) shortens the traffic-manager TTL: one probe that sees the
            # combined verdict about to change is enough; a short TTL costs only re-resolutions.
            if len(degraded) >= needed:
                feed, health = degraded[0]
                votes = f" ({len(degraded)} of {len(feeds)} probes agree)" if len(feeds) > 1 else ""
                trend = RECOVERING if any(h.trend == RECOVERING for _, h in degraded) else ""
                combined[key] = EndpointHealth(Status.DEGRADED, health.reason + votes,
                                               min(h.since for _, h in degraded), trend)
            elif expired:
                combined[key] = EndpointHealth(Status.ONLINE, f"health expired: no probe answer for over "
                                                              f"{ttl:g}s, failing open")
            elif degraded:
                combined[key] = EndpointHealth(Status.ONLINE, f"{len(degraded)} of {len(feeds)} probes say "
                                                              f"degraded, quorum is {needed}: kept online", 0.0,
                                               _suspect(verdicts))
            elif verdicts:
                status = Status.ONLINE if any(h.status is Status.ONLINE for _, h in verdicts) else Status.CHECKING
                combined[key] = EndpointHealth(status, verdicts[0][1].reason, verdicts[0][1].since,
                                               _suspect(verdicts))
        return combined

    def refresh(self) -> bool:
        """Recombine and hand dnsd a new snapshot when anything changed. True when it did."""
        combined = self.combine()
        if combined == self.current:
            return False
        self.current = combined
        self.generation += 1
        self.apply(HealthSnapshot(self.generation, MappingProxyType(combined)))
        return True

    # -- fetching -------------------------------------------------------------------------------

    async def fetch(self, session: aiohttp.ClientSession, feed: FeedState) -> bool:
        """One poll of one feed. True when its document changed. Only a fully parsed document is used."""
        headers = {"If-None-Match": feed.etag} if feed.etag and feed.document is not None else {}
        error = None
        changed = False
        trust = self.trust[feed.url]
        try:
            tls = trust.ssl()
            headers.update(trust.headers())
            timeout = aiohttp.ClientTimeout(total=max(1.0, min(5.0, self.settings.poll_interval * 2)))
            async with session.get(feed.url, headers=headers, timeout=timeout, allow_redirects=False,
                                   ssl=tls) as response:
                if response.status == 304:
                    feed.fetched_at = self.clock()
                elif response.status == 200:
                    body = await response.content.read(MAX_DOCUMENT_BYTES + 1)
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise ValueError(f"document larger than {MAX_DOCUMENT_BYTES} bytes")
                    document = FeedDocument.from_json(json.loads(body))
                    self._report_unknown(feed.url, document)
                    changed = feed.document is None or document.endpoints != feed.document.endpoints
                    feed.document = document
                    feed.etag = response.headers.get("ETag")
                    feed.fetched_at = self.clock()
                elif response.status in (401, 403):  # a failed poll, never data
                    error = (f"HTTP {response.status}: probes refused "
                             f"{'our token' if 'Authorization' in headers else 'a request without a token'}")
                    self._log_refusal(feed, error, bool(trust.token))
                else:
                    error = f"HTTP {response.status}"
        except FeedAccessError as err:  # our CA or token file is unusable: the poll is not sent
            error = str(err)
        except aiohttp.ClientConnectorCertificateError as err:
            error = f"TLS certificate of {feed.url} not trusted: {err.certificate_error}"
        except aiohttp.ClientSSLError as err:  # e.g. plain HTTP answering an https URL
            error = f"TLS handshake with {feed.url} failed: {getattr(err, 'os_error', None) or err}"
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            error = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        except (ValueError, UnicodeDecodeError) as err:  # JSON or schema: keep the last good document
            error = f"bad health document: {err}"
        if error != feed.error:
            if error:
                log.warning("health_feed_error", url=feed.url, error=error, keeping="last good document")
            else:
                log.info("health_feed_ok", url=feed.url)
        if error:
            self.errors_by_url[feed.url] = self.errors_by_url.get(feed.url, 0) + 1
        feed.error = error
        return changed

    def _log_refusal(self, feed: FeedState, error: str, sent_token: bool) -> None:
        suppressed = self._refusals[feed.url].admit()
        if suppressed is not None:
            log.error("health_feed_unauthorized", url=feed.url, error=error, refused_since_last_log=suppressed,
                      fix="the token in health.token_file must match probes.token_file" if sent_token
                      else "set health.token_file (this probes requires a bearer token)",
                      keeping="last good document until health.ttl")

    def _report_unknown(self, url: str, document: FeedDocument) -> None:
        for key in document.endpoints:
            if key not in self.known and key not in self._reported_unknown:
                self._reported_unknown.add(key)
                log.info("health_for_unknown_replica", url=url, registry=key[0], replica=key[1])

    async def run(self) -> None:
        """Poll forever; recombine every round, so expiry happens even while every fetch fails."""
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
            while True:
                started = time.monotonic()
                results = await asyncio.gather(*(self.fetch(session, feed) for feed in self.feeds))
                changed = self.refresh()
                await self.save_state_off_loop(force=changed or any(results))
                await asyncio.sleep(max(0.05, self.settings.poll_interval - (time.monotonic() - started)))
