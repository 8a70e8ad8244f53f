"""placeholder until the dev cluster fixture lands"""
