loraroute mock-vllm --port 8000 --model models/base --served-model-name base-model \
    --lora-modules technical-lora=/loras/tech medical-lora=/loras/med legal-lora=/loras/legal
