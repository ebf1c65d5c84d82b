"""The processes of one machine, as named on the command line (`main.py --service NAME`)."""

from enum import StrEnum


class Service(StrEnum):
    ORDER = "ORDER"
    ORDER_CREATED = "ORDER_CREATED"
    DISPENSE = "DISPENSE"
    SCREEN = "SCREEN"
    NOTIFICATION = "NOTIFICATION"
    SANDBOX = "SANDBOX"
    WEBSOCKET = "WEBSOCKET"
    #: The operator's web console (services/operator_service.py).
    OPERATOR = "OPERATOR"
    #: Fleet mode: the backend's websocket gateway for the machines' agents
    #: (services/gateway_service.py).
    GATEWAY = "GATEWAY"


#: The workers `main.py up` starts next to the websocket server (and the sandbox, without keys).
WORKERS = (Service.ORDER, Service.ORDER_CREATED, Service.DISPENSE, Service.SCREEN)

#: The shared workers of fleet mode: `main.py backend --workers N` runs N processes of each.
FLEET_WORKERS = WORKERS

#: The services whose heartbeat says the machine is working: `health`, status, the console's
#: overview and the stale-heartbeat alert all watch these.
WATCHED = (*WORKERS, Service.NOTIFICATION)
