"""A no-op addon script for stock ``mitmdump -s`` (bench/gateway.py's "mitmdump as
shipped" row): mitmproxy with its default addons, run the way its documentation
runs a script, doing nothing with the flows."""


class NoOp:
    def request(self, flow: object) -> None:
        pass


addons = [NoOp()]
