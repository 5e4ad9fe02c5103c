"""Wi-Fi MQTT link to the gateway's local Mosquitto, on micropython-lib's umqtt.simple.

umqtt.simple does the MQTT 3.1.1 packets; the retry policy lives here (as umqtt.robust
would, but bounded and non-blocking for the sampling loop):

- QoS 1 publish of each frame to ``gridedge/v1/dev/<id>/frame``; a frame leaves the RAM
  ring only after its PUBACK, so a dropped link loses nothing while the ring has room
  (the gateway de-duplicates by (device, boot, seq) what is sent twice).
- Last will ``offline`` and birth ``online`` on ``gridedge/v1/dev/<id>/status`` (retained).
- Keepalive: a PINGREQ when nothing was sent for half the keepalive; a PUBACK that does not
  come within the socket timeout marks the link dead (half-open connections).
- Reconnect with exponential backoff from 1 s, capped at 60 s, with +-25 % jitter so a
  feeder's meters do not reconnect in lockstep after a gateway restart.
- TLS with server verification against the gateway's CA (DER, /ca.der, which ``gridedge
  provision --ca-file`` puts there) by default: mqtt_tls ``auto`` (the default) is TLS
  whenever /ca.der is on the board, ``on`` insists on it (no CA: the link stays down with
  that error), ``off`` is plaintext. User name and password when set.
- At most ``burst`` frames per service call, so a backlog does not starve sampling.
- Commands (command.py): a persistent session (clean_session off) subscribed at QoS 1 to
  ``gridedge/v1/dev/<id>/cmd``, so the broker keeps what the gateway sends while the
  meter is away; each service call takes what has arrived into ``inbox`` (at most
  ``MAX_INBOX`` messages of at most ``MAX_COMMAND`` bytes; more are dropped and counted
  in ``dropped_commands``: the gateway sends again what it does not hear back about).
"""

import os
import sys
import time

MAX_INBOX = 4
MAX_COMMAND = 512
BACKOFF_MIN_MS = 1000
BACKOFF_MAX_MS = 60000
SOCKET_TIMEOUT_S = 5


def _jitter(ms):
    r = os.urandom(1)[0]  # 0..255 -> 0.75 .. 1.25
    return ms * (192 + r // 2) // 256


def use_tls(setting, ca_path):
    """Whether to connect with TLS: mqtt_tls on/off as set; auto when the CA is there."""
    if setting == "on":
        return True
    if setting == "off":
        return False
    try:
        os.stat(ca_path)
        return True
    except OSError:
        return False


def _tls_context(ca_path):
    """An SSLContext that verifies the broker against the gateway's CA (DER, as mbedTLS on
    MicroPython wants it)."""
    import ssl

    try:
        with open(ca_path, "rb") as f:
            ca = f.read()
    except OSError:
        raise OSError(2, "mqtt_tls is on but there is no CA certificate %s" % ca_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=ca)
    return ctx


class _TLSModule:
    """umqtt.simple 1.3.4 imports the old ``ussl`` and calls ussl.wrap_socket(sock, **p);
    this stands in for it and wraps with a verifying SSLContext instead."""

    def __init__(self, ctx, host):
        self.ctx = ctx
        self.host = host
        self.raw = None

    def wrap_socket(self, sock, **_params):
        self.raw = sock  # MicroPython's SSLSocket has no settimeout(): time out the TCP one
        sock.settimeout(SOCKET_TIMEOUT_S)
        return self.ctx.wrap_socket(sock, server_hostname=self.host)


class MQTTLink:
    def __init__(self, cfg, wifi=None, clock=None, burst=8, ca_path="ca.der"):
        device = cfg.get("device_id")
        self.cfg = cfg
        # umqtt.simple writes these straight to the socket: bytes, not str.
        self.topic = b"gridedge/v1/dev/%s/frame" % device.encode()
        self.status_topic = b"gridedge/v1/dev/%s/status" % device.encode()
        self.cmd_topic = b"gridedge/v1/dev/%s/cmd" % device.encode()
        self.inbox = []  # commands received, for the app
        self.dropped_commands = 0
        self.client_id = b"gridedge-" + device.encode()
        self.wifi = wifi
        self.clock = clock
        self.burst = burst
        self.ca_path = ca_path
        self._tls = None
        self.tls = False  # the last connection attempt's choice
        self.client = None
        self.backoff_ms = BACKOFF_MIN_MS
        self.next_attempt = time.ticks_ms()
        self.last_tx = time.ticks_ms()
        self.connects = 0
        self.failures = 0
        self.sent = 0
        self.last_error = None

    @property
    def up(self):
        return self.client is not None

    def _new_client(self):
        from umqtt.simple import MQTTClient

        cfg = self.cfg
        host = cfg.get("mqtt_host")
        tls = self.tls = use_tls(cfg.get("mqtt_tls"), self.ca_path)
        self._tls = None
        if tls:
            self._tls = _TLSModule(_tls_context(self.ca_path), host)
            sys.modules["ussl"] = self._tls
        user = cfg.get("mqtt_user")
        client = MQTTClient(
            self.client_id, host, cfg.get("mqtt_port"),
            user=user.encode() if user else None,
            password=cfg.get("mqtt_password").encode() if user else None,
            keepalive=cfg.get("mqtt_keepalive_s"), ssl=tls,
        )
        client.set_last_will(self.status_topic, b"offline", retain=True, qos=1)
        client.set_callback(self._received)
        return client

    def _received(self, topic, msg):
        # umqtt calls this from wait_msg (here, or while a publish waits for its PUBACK).
        if topic == self.cmd_topic and len(msg) <= MAX_COMMAND and \
                len(self.inbox) < MAX_INBOX:
            self.inbox.append(bytes(msg))
        else:
            self.dropped_commands += 1

    def _timeout(self, client):
        # umqtt.simple's wait_msg() puts the socket back to blocking-forever: set the
        # timeout again before every wait, on the TCP socket under TLS.
        sock = self._tls.raw if self._tls is not None else client.sock
        sock.settimeout(SOCKET_TIMEOUT_S)

    def _connect(self):
        if self.wifi is not None and not self.wifi.ensure():
            raise OSError(113, "Wi-Fi not connected")  # EHOSTUNREACH
        client = self._new_client()
        client.connect(clean_session=False)
        try:  # Nagle off (IPPROTO_TCP 6, TCP_NODELAY 1 in lwIP and Linux): umqtt writes a
            # publish in pieces, and each would wait for the broker's delayed ACK (40 ms)
            (self._tls.raw if self._tls is not None else client.sock).setsockopt(6, 1, 1)
        except (OSError, AttributeError):  # a port without the option: only slower
            pass
        self._timeout(client)
        client.subscribe(self.cmd_topic, qos=1)
        self._timeout(client)
        client.publish(self.status_topic, b"online", retain=True, qos=1)
        self.client = client
        self.connects += 1
        self.backoff_ms = BACKOFF_MIN_MS
        self.last_tx = time.ticks_ms()
        if self.clock is not None and not self.clock.synced:
            self.clock.sync_ntp(self.cfg.get("ntp_host"))

    def _drop(self, error):
        self.failures += 1
        self.last_error = error
        if self.client is not None:
            try:
                self.client.sock.close()
            except (OSError, AttributeError):
                pass
        self.client = None
        self.next_attempt = time.ticks_add(time.ticks_ms(), _jitter(self.backoff_ms))
        self.backoff_ms = min(BACKOFF_MAX_MS, self.backoff_ms * 2)

    def service(self, ring):
        """Connect when due, send up to ``burst`` frames, keep the connection alive."""
        now = time.ticks_ms()
        if self.client is None:
            if time.ticks_diff(now, self.next_attempt) < 0:
                return False
            try:
                self._connect()
            except Exception as e:  # noqa: BLE001
                # OSError: refused, unreachable, timeouts (EAGAIN on unix, ETIMEDOUT on
                # boards); IndexError: getaddrinfo found nothing or the socket closed;
                # umqtt.simple.MQTTException (a plain Exception): CONNACK refused.
                self._drop(e)
                return False
        client = self.client
        try:
            for _ in range(self.burst):
                frame = ring.peek()
                if frame is None:
                    break
                self._timeout(client)
                client.publish(self.topic, frame, qos=1)  # returns after the PUBACK
                ring.pop()
                self.sent += 1
                self.last_tx = time.ticks_ms()
            client.check_msg()  # a command that came meanwhile, if any (non-blocking)
            self._timeout(client)
            keepalive_ms = self.cfg.get("mqtt_keepalive_s") * 1000
            if time.ticks_diff(time.ticks_ms(), self.last_tx) >= keepalive_ms // 2:
                client.ping()
                self._timeout(client)
                client.wait_msg()  # the PINGRESP, or a timeout error: the link is dead
                self.last_tx = time.ticks_ms()
        except (OSError, IndexError) as e:  # IndexError: umqtt reads b"" from a closed socket
            self._drop(e)
            return False
        return True

    def test(self):
        """One connect/disconnect for the console's `link test`."""
        try:
            self._connect()
            self.client.disconnect()
            self.client = None
            return "mqtt link: connected to %s:%d %s and back" % (
                self.cfg.get("mqtt_host"), self.cfg.get("mqtt_port"),
                "over TLS" if self.tls else "in plaintext (no TLS: no %s)" % self.ca_path
                if self.cfg.get("mqtt_tls") == "auto" else "in plaintext (mqtt_tls off)")
        except Exception as e:  # noqa: BLE001 - report whatever stopped it, in one line
            self.client = None
            return "error: mqtt link to %s:%d: %r" % (
                self.cfg.get("mqtt_host"), self.cfg.get("mqtt_port"), e)
