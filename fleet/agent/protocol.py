"""The agent API's messages, shared by the car (which sends them) and the platform (which validates them).

All paths are under /api/v1/agent/ and every request is signed (see signing.py). Bodies are JSON.

GET me/           which car the credential belongs to, asked once when the agent starts
    -> 200 {"vehicle_id": int, "display_name": str, "time_zone": str (IANA, the one the car was registered with)}

POST hardware/    what the car's compute can do, once when the agent starts (fields: hardware.py)
    -> 200 {"compute_class": str, "description": str}: the class the platform derived from the report

POST heartbeat/   as often as the platform asks (next_heartbeat_s of the last answer), at most every
                  HEARTBEAT_SECONDS of the car's clock; at once when something important changed since the last one
                  (parked, plugged_in, network, computing); every HEARTBEAT_SECONDS while a work unit runs
    observed_at          str    ISO 8601 with offset, the car's clock when the state was read
    clock_rate           float  car-clock seconds per real second: 1 for a real car, X for a simulated one
    parked               bool   the car is not moving (gear in park)
    plugged_in           bool
    charge_power_w       float  power the charger delivers now, W (0 when unplugged)
    battery_pct          float  0 to 100
    battery_capacity_kwh float  usable pack capacity, kWh
    network              str    one of NETWORKS
    bandwidth_down_mbps  float  measured, ≥ 0
    bandwidth_up_mbps    float  measured, ≥ 0
    latency_ms           float  measured round trip to the platform, ≥ 0
    runtime_version      str    ONNX Runtime version on the car
    models_cached        list[str]  sha256 hex of inference-model files the car holds
    computing            bool   the car is running a work unit now
    compute_power_w      float  power drawn by compute now, W
    energy_used_today_wh float  energy spent on compute since local midnight, Wh
    -> 200 {"received_at": iso, "next_heartbeat_s": float}: REAL seconds (not car seconds: a simulated car multiplies
       by its clock_rate) the platform suggests until the next heartbeat, HEARTBEAT_SECONDS of car time for a car that
       holds work or is about to get some, IDLE_HEARTBEAT_SECONDS for one that holds none and expects none. The agent
       honours it and asks for work (lease/) only with a heartbeat; an answer without it means a heartbeat every
       HEARTBEAT_SECONDS. The departure notice and an important change never wait for it.

POST departure/   "I am about to drive": sent before the car moves; the platform releases its work at once
    observed_at          str    ISO 8601, the car's clock
    -> 200 {"released_work_units": int}

POST lease/       ask for a work unit, body {}: only while parked on one of WORK_NETWORKS, one unit at a time
    -> 204 when there is none; 200 with the lease (fields: see executor.py, WorkUnit.from_lease); 409 with code
       "cannot_work" when the car may not work now (paused, suspended, driving, off WiFi). A car's first lease of a
       model variant is a self-test of it (its unit id starts "selftest-"): run and report it like any unit.

POST lease/renew/ the car is still working on a unit: unit_id, lease_id
    -> 200 {"lease_seconds": float}: the lease runs that much longer from now; 409 when the lease is no longer the
       car's (or the unit took far longer than the car's measured speed predicts): stop the unit, report nothing

POST result/      a unit's outputs, body executor.result_payload(): unit_id, lease_id, output_npy_b64, output_sha256,
                  items, seconds, energy_wh, emulated, runtime_version
    -> 200 {"accepted": true}; 409 when the lease is no longer the car's (expired or reissued): the car drops the
       result quietly

POST failure/     a unit the car could not run (download, checksum, model, inference) or a lease it could not read,
                  body executor.failure_payload(): unit_id, lease_id, error (one line, at most 300 characters)
    -> 200; a 409 (lease no longer the car's) is dropped quietly too

Errors have the platform's one shape, {"code", "message", "fields"}: 400 names the bad field and changes nothing;
401 with code "credential_invalid" (revoked, unknown or forged: the agent stops), "clock_skew" (the car's clock is
more than 300 s off) or "replayed" (a nonce seen before); the last two concern one request and the agent carries on.
"""

HEARTBEAT_SECONDS = 15
# The interval the platform suggests (car seconds) to a car that holds no work and expects none: an idle car sends a
# quarter of the requests, and anything that matters (a departure, a change of plug or network) still goes at once.
IDLE_HEARTBEAT_SECONDS = 60
# A car silent for this long is taken for gone (fleet.availability, marketplace.dispatch): its work goes to other cars.
SILENT_AFTER_SECONDS = 1.5 * HEARTBEAT_SECONDS
# 401 codes that concern one request (the car's clock, a replayed nonce), not the credential: the agent carries on.
TRANSIENT_AUTH_ERRORS = ("clock_skew", "replayed")
# After a departure notice, heartbeats that still say "parked" (the car has not moved yet) do not reopen a parking
# session for this long (car seconds); the car counts as leaving.
DEPARTURE_GRACE_SECONDS = 600
NETWORKS = ("wifi", "ethernet", "cellular", "none")
# Networks the platform sends work over. Cellular is never used: it is slow, metered and the owner pays for it.
WORK_NETWORKS = ("wifi", "ethernet")
MAX_BANDWIDTH_MBPS = 100_000.0
MAX_LATENCY_MS = 60_000.0
MAX_POWER_W = 20_000.0
MAX_BATTERY_KWH = 300.0
MAX_CLOCK_RATE = 100_000.0
