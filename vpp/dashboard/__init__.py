"""The fleet dashboard: the page (``views``, ``pages``), what it reads (``selectors``) and the live feed
(``consumers``: ``/ws/dashboard``)."""
