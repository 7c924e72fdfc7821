"""The fleet domain's refusal, shared by its services."""


class FleetError(ValueError):
    """A request the fleet domain refuses, with a reason fit for the API's 4xx answer."""
