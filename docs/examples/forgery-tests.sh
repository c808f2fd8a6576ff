python -m pytest tests/e2e/test_nats_security.py tests/loraroute/test_natsauth.py
