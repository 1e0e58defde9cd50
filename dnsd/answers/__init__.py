"""Answers: the zone's names per view (zonedata), pure resolution (resolve), the compiled tables (tables), and why (explain)."""
