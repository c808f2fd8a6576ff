loraroute config push config/config.yaml
loraroute config get > running.yaml
