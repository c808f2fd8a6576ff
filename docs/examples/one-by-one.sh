nats-server -js -sd var/nats -a 127.0.0.1 -p 4222 &         # or any NATS 2.10+ server
loraroute mock-vllm --port 8000 --model llama2-7b \
    --lora-modules technical-lora=technical-lora medical-lora=medical-lora legal-lora=legal-lora &
loraroute classifier --nats nats://127.0.0.1:4222 --config config/config.yaml &
loraroute dispatcher --nats nats://127.0.0.1:4222 --config config/config.yaml &
loraroute jobs       --nats nats://127.0.0.1:4222 --config config/config.yaml &
loraroute ingress    --nats nats://127.0.0.1:4222 --config config/config.yaml --port 8080 &
