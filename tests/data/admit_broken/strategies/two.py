from qtd.strategy import Strategy


class One(Strategy):
    pass


class Two(Strategy):
    pass
