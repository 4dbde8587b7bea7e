"""predilect.client"""
