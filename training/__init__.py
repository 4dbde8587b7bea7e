"""predilect.training"""
