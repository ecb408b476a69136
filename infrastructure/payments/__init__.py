"""Payment adapters."""

#: What an operator sets to turn each payment provider on: every "not configured" answer
#: names it (``PaymentService.require``; ``interfaces/bootstrap.py`` hands it over).
SETUP_VARIABLES: dict[str, str] = {
    "stripe": "STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET",
    "crypto": "CRYPTO_RPC_URL and CRYPTO_RECEIVING_ADDRESS (CRYPTO_NETWORK picks the chain)",
    "afterdark": "AFTERDARK_API_KEY (and AFTERDARK_API_URL)",
}
