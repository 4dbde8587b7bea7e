"""predilect.serving"""
