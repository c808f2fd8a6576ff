loraroute config check config/config.yaml
