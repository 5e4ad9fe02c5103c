"""Wi-Fi station for boards that have it: connect, and reconnect when the AP drops us.

``ensure`` never blocks for long: it starts a connection and reports whether the station
is up; the MQTT link simply retries on its backoff schedule. On the unix port there is no
``network`` module and the host's network is used as it is.
"""


class WiFi:
    def __init__(self, cfg):
        self.cfg = cfg
        try:
            import network
        except ImportError:
            self.wlan = None
            return
        self.wlan = network.WLAN(network.STA_IF)
        self.wlan.active(True)
        self.started = False

    def ensure(self):
        if self.wlan is None:
            return True
        if self.wlan.isconnected():
            return True
        if not self.cfg.get("wifi_ssid"):
            return False
        if not self.started or self.wlan.status() < 0:  # idle, or failed: (re)start
            self.wlan.connect(self.cfg.get("wifi_ssid"), self.cfg.get("wifi_password"))
            self.started = True
        return False
