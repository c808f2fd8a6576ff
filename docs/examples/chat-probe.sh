python loadtest/chat_probe.py --cache embeddings.npz
