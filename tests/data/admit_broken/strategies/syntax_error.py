from qtd.strategy import Strategy


class Broken(Strategy):
    def on_bar(self, bar)
        pass
