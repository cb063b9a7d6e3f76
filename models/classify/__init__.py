"""classify: one SMTP reply -> a reason (sisimai's vocabulary) and a class, from TOML rules.

May import: ``models.schema`` only.
"""
