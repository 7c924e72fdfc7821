"""The OCPP 2.x device model this agent exposes (Get/SetVariables, GetBaseReport -> NotifyReport).

Writable values are validated against their type and range, persisted in the agent's SQLite state (so the
CSMS-configured fail-safe survives a restart), and announced to listeners (the controller re-reads them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

READ_ONLY, READ_WRITE, WRITE_ONLY = "ReadOnly", "ReadWrite", "WriteOnly"


@dataclass
class Variable:
    component: str
    name: str
    value: str
    mutability: str = READ_WRITE
    data_type: str = "string"  # string | integer | decimal | boolean | OptionList
    unit: str | None = None
    options: tuple[str, ...] = ()
    min_value: float | None = None
    max_value: float | None = None
    instance: str | None = None  # e.g. OCPPCommCtrlr.MessageAttempts[TransactionEvent]

    @property
    def key(self) -> tuple[str, str, str | None]:
        return (self.component, self.name, self.instance)

    @property
    def storage_key(self) -> str:
        return storage_key(self.component, self.name, self.instance)

    def check(self, value: str) -> str | None:
        """Why ``value`` is not acceptable, or None."""
        try:
            if self.data_type == "integer":
                number: float = int(value)
            elif self.data_type == "decimal":
                number = float(value)
            elif self.data_type == "boolean":
                return None if value in ("true", "false") else "expected true or false"
            elif self.data_type == "OptionList":
                return None if value in self.options else f"expected one of {', '.join(self.options)}"
            else:
                return None if len(value) <= 2500 else "too long"
        except ValueError:
            return f"expected {self.data_type}"
        if self.min_value is not None and number < self.min_value:
            return f"below minimum {self.min_value:g}"
        if self.max_value is not None and number > self.max_value:
            return f"above maximum {self.max_value:g}"
        return None

    def report(self) -> dict[str, Any]:
        attribute: dict[str, Any] = {"type": "Actual", "mutability": self.mutability}
        if self.mutability != WRITE_ONLY:
            attribute["value"] = self.value
        characteristics: dict[str, Any] = {"data_type": self.data_type, "supports_monitoring": False}
        if self.unit:
            characteristics["unit"] = self.unit
        if self.options:
            characteristics["values_list"] = ",".join(self.options)
        variable: dict[str, Any] = {"name": self.name}
        if self.instance is not None:
            variable["instance"] = self.instance
        return {
            "component": {"name": self.component},
            "variable": variable,
            "variable_attribute": [attribute],
            "variable_characteristics": characteristics,
        }


def storage_key(component: str, name: str, instance: str | None = None) -> str:
    """The key a CSMS-set value is persisted under in the agent's state."""
    return f"dm:{component}.{name}" + (f".{instance}" if instance is not None else "")


def default_variables(*, vendor: str, model: str, serial: str) -> list[Variable]:
    return [
        Variable("ChargingStation", "VendorName", vendor, READ_ONLY),
        Variable("ChargingStation", "Model", model, READ_ONLY),
        Variable("ChargingStation", "SerialNumber", serial, READ_ONLY),
        # Set by the agent after a verified firmware update (edge_agent.firmware); empty until the first one.
        Variable("ChargingStation", "FirmwareVersion", "", READ_ONLY),
        Variable(
            "ChargingStation",
            "AvailabilityState",
            "Available",
            READ_ONLY,
            "OptionList",
            options=("Available", "Occupied", "Unavailable", "Faulted"),
        ),
        Variable("OCPPCommCtrlr", "HeartbeatInterval", "300", data_type="integer", unit="s", min_value=1),
        # E13 retries of buffered (transaction-related) messages. The interval is a decimal here, not the spec's
        # integer, so the simulated fleet and tests can retry within a second; a CSMS's integer value is accepted.
        Variable(
            "OCPPCommCtrlr", "MessageAttempts", "3", data_type="integer", min_value=1, instance="TransactionEvent"
        ),
        Variable(
            "OCPPCommCtrlr",
            "MessageAttemptInterval",
            "10",
            data_type="decimal",
            unit="s",
            min_value=0.05,
            instance="TransactionEvent",
        ),
        Variable("SampledDataCtrlr", "TxUpdatedInterval", "1", data_type="integer", unit="s", min_value=1),
        Variable(
            "SampledDataCtrlr",
            "TxUpdatedMeasurands",
            "SoC,Energy.Active.Import.Register,Energy.Active.Export.Register,Power.Active.Import,Power.Active.Export,"
            "Frequency,Voltage",
            READ_ONLY,
        ),
        Variable("SecurityCtrlr", "BasicAuthPassword", "", WRITE_ONLY),
        Variable("EdgeAgentCtrlr", "IdleTxUpdatedInterval", "60", data_type="integer", unit="s", min_value=1),
        Variable(
            "EdgeAgentCtrlr", "FailSafeMode", "ChargingOnly", data_type="OptionList", options=("ChargingOnly", "Idle")
        ),
        Variable("EdgeAgentCtrlr", "FailSafeChargeLimit", "7400", data_type="decimal", unit="W", min_value=0),
        Variable("EdgeAgentCtrlr", "LinkLossTimeout", "2", data_type="decimal", unit="s", min_value=0.2, max_value=2.0),
        Variable(
            "EdgeAgentCtrlr", "MobilityFloorSoC", "20", data_type="decimal", unit="Percent", min_value=0, max_value=100
        ),
        Variable(
            "EdgeAgentCtrlr", "DroopDeadband", "0.036", data_type="decimal", unit="Hz", min_value=0.017, max_value=1.0
        ),
        Variable("EdgeAgentCtrlr", "DroopPercent", "5", data_type="decimal", unit="Percent", min_value=2, max_value=10),
        # The cap on the E13 back-off: past MessageAttempts the agent keeps retrying at this pace at most.
        Variable("EdgeAgentCtrlr", "MessageAttemptIntervalMax", "60", data_type="decimal", unit="s", min_value=0.05),
    ]


class DeviceModel:
    def __init__(
        self,
        variables: list[Variable],
        *,
        load: Callable[[str], str | None] | None = None,
        save: Callable[[str, str], None] | None = None,
    ) -> None:
        self._vars = {v.key: v for v in variables}
        self._components = {v.component for v in variables}
        self._save = save
        self.listeners: list[Callable[[str, str, str], None]] = []
        if load is not None:
            for v in variables:
                stored = load(v.storage_key)
                if stored is not None and v.mutability != READ_ONLY and v.check(stored) is None:
                    v.value = stored

    def get(self, component: str, name: str, instance: str | None = None) -> str:
        return self._vars[(component, name, instance)].value

    def number(self, component: str, name: str, instance: str | None = None) -> float:
        return float(self.get(component, name, instance))

    def set_internal(self, component: str, name: str, value: str, instance: str | None = None) -> None:
        """Set by the agent itself (read-only state such as AvailabilityState)."""
        self._vars[(component, name, instance)].value = value

    def _lookup(self, component: str, variable: dict[str, Any]) -> tuple[Variable | None, str | None]:
        if component not in self._components:
            return None, "UnknownComponent"
        var = self._vars.get((component, variable["name"], variable.get("instance")))
        return (var, None) if var is not None else (None, "UnknownVariable")

    def get_variable(self, request: dict[str, Any]) -> dict[str, Any]:
        component, variable = request["component"], request["variable"]
        result: dict[str, Any] = {"component": component, "variable": variable}
        attr_type = request.get("attribute_type", "Actual")
        var, error = self._lookup(component["name"], variable)
        if var is None:
            result["attribute_status"] = error
        elif attr_type != "Actual":
            result["attribute_status"] = "NotSupportedAttributeType"
        elif var.mutability == WRITE_ONLY:
            result["attribute_status"] = "Rejected"
        else:
            result["attribute_status"], result["attribute_value"] = "Accepted", var.value
        result["attribute_type"] = attr_type
        return result

    def set_variable(self, request: dict[str, Any]) -> dict[str, Any]:
        component, variable = request["component"], request["variable"]
        attr_type = request.get("attribute_type", "Actual")
        value = str(request["attribute_value"])
        result: dict[str, Any] = {"component": component, "variable": variable, "attribute_type": attr_type}
        var, error = self._lookup(component["name"], variable)
        if var is None:
            result["attribute_status"] = error
            return result
        if attr_type != "Actual":
            result["attribute_status"] = "NotSupportedAttributeType"
            return result
        reason = "read-only" if var.mutability == READ_ONLY else var.check(value)
        if reason is not None:
            result["attribute_status"] = "Rejected"
            result["attribute_status_info"] = {"reason_code": "InvalidValue", "additional_info": reason[:512]}
            return result
        var.value = value
        if self._save is not None:
            self._save(var.storage_key, value)
        for listener in self.listeners:
            listener(var.component, var.name, value)
        result["attribute_status"] = "Accepted"
        return result

    def report(self, base: str) -> list[dict[str, Any]]:
        """ConfigurationInventory: writable variables; FullInventory and SummaryInventory: all of them."""
        vars_ = list(self._vars.values())
        if base == "ConfigurationInventory":
            vars_ = [v for v in vars_ if v.mutability != READ_ONLY]
        return [v.report() for v in vars_]
