"""predilect.build"""
