"""adapters: native log and webhook formats (KumoMTA, Postfix, PowerMTA, SES, SendGrid, DSN,
ARF) into canonical events. Empty for now."""
